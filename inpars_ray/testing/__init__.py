"""Builders of tiny local models, used by the tests and by the offline demo (no weights are downloaded)."""
