"""Data: embedded image sets, captions and prompt files."""
