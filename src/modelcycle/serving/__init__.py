"""HTTP serving: app factory, micro-batching, model loading, web page."""
