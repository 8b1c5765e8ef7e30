"""Adapters for agent frameworks (optional extras), each importing its framework only when used:
``smolagents``, ``langchain``, ``inspect_ai``, ``minisweagent``, ``deepagents`` and ``openai_agents``
(the OpenAI Agents SDK's sandbox client)."""
