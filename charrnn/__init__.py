"""charrnn: character-level recurrent language models."""

__version__ = "0.1.0"
