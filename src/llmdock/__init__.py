"""llmdock: deploy open-weight LLMs on your own GPU servers."""

__version__ = "0.1.0"
