"""Publishing a trained encoder: timm's folder format plus a model card (``umedpt-fl export``).

The entry point is :func:`umedpt.export.exporter.export_checkpoint`; this package file
imports nothing, so a site that only needs a metric name does not load the exporter.
"""
