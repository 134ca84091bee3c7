"""Moving training data and checkpoints to and from S3, and proving every byte arrived.

boto3 is the only S3 client and is imported inside functions, so `mltrain --help` stays fast.
Modules: `url` (s3:// parsing), `client` (session, retries, error translation), `digest` (local
hashes and the checksum S3 stores), `manifest`, `progress`, `transfer` (upload/download/sync),
`verify`, `buckets` (`mltrain storage init`), `source` (streaming s3:// data sources). The checkpoint
mirror, which moves checkpoints through `transfer`, is the trainer's (mltrain.train.mirror).
"""
