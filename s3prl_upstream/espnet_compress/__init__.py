"""The ``espnet_compress`` s3prl upstream: ``hubconf`` (entry functions) and ``expert`` (the module)."""
