"""Research experiments (accuracy and transfer studies) with committed results; not shipped."""
