"""edge: streaming edge inference for steel-strip surface inspection."""

__version__ = "0.1.0"
