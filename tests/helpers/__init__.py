"""Helpers shared by several test modules (import the submodule you need: ``gpu`` imports torch)."""
