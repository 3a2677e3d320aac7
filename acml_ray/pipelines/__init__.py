"""End-to-end stages that assemble the library pieces (prepare data, demo, the whole pipeline)."""
