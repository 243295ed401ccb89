"""Apache Beam pipelines that clean raw web text and bitext into the shards the seqio tasks read."""

import logging


class _DropBigQueryNotice(logging.Filter):
    """Beam logs "apitools not found, and bigquery client libraries are not available" at import
    when the GCP extras are absent; we never use BigQuery, so a CLI's output should not say so."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("apitools not found")


logging.getLogger().addFilter(_DropBigQueryNotice())
