"""Drop-in adapters for trainers that build attention masks themselves (one module each)."""
