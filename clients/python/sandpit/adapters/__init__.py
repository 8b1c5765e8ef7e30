"""Adapters for agent frameworks (optional extras): ``sandpit.adapters.smolagents`` and
``sandpit.adapters.langchain``. Each imports its framework only when used."""
