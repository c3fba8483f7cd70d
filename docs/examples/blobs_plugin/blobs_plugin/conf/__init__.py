"""The config groups the blobs task brings, laid out as modelcycle's own `conf/`."""
