"""The studio: job queue, web UI and REST API, built on the lipdub library (which never imports it)."""
