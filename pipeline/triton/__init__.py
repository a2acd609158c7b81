"""The Triton model repository: config.pbtxt generation and validation, atomic versioned publication to a
directory or an S3 prefix, and the Triton HTTP client calls promote and rollback make."""
