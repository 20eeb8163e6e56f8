"""S3 for the whole project: how to reach it (`client`) and how folders travel through it (`folders`).

One options type (`client.S3Options`) is read from the environment at a flow's boundary and passed
down as a value: nothing below reads environment variables except boto3's own credential chain, so
credentials never travel through parameters, logs, artifacts or files. One client factory
(`S3Options.client`) gives every request botocore's standard retries; files move through boto3's
transfer manager, so a large file goes up or down in parts and a failed part is re-sent by itself.

Layout under the artifact target `s3://bucket/prefix` (ATFT_ARTIFACT_URI):

```
<prefix>/<run folder name>/...           a run folder: the S3 mirror of a run, and what gpu workers
                                         on other hosts send back to the pipeline
<prefix>/cache/<cache folder name>/...   a cache folder; its name is its content fingerprint, so it is
                                         written once and never changes
<prefix>/cache/<cache folder name>/_exchange.json   uploaded last: the folder is complete
```

`s3://` input panels are read by `atft_core.data.source` with the same options and client.
"""
