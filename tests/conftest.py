# Prefect / S3 fixtures. Imported first: it sets a private PREFECT_HOME before Prefect is imported.
from tests.prefect_fixtures import (  # noqa: F401,E402
    prefect_harness,
    s3_bucket,
    s3_endpoint,
    tiny_config,
    tiny_demo,
)
