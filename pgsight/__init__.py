"""pgsight: multimodal models inside PostgreSQL."""
__version__ = "0.1.0"
