"""The six sections of the report, one module each: ``build(inputs) -> dict`` for the template."""
