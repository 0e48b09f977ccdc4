"""Training of both stages, code extraction, distributed helpers and export."""
