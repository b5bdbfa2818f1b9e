"""Data: site readers for the formats people have, preprocessing, demo data and previews."""
