"""Bulk loading of ImageNet-style folders and archives into S3 and image_info."""
