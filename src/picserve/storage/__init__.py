"""Where result images go: a folder served by the API (default) or an S3-compatible bucket."""
