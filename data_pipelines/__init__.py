"""Apache Beam pipelines that clean raw web text and bitext into the shards the seqio tasks read."""
