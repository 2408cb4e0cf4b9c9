"""The REST API: app factory (``service.api.main``), routes, auth, problem+json errors."""
