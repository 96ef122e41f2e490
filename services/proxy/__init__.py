"""A round-robin HTTP proxy that runs several gateway replicas behind one address (``flywheel proxy``)."""
