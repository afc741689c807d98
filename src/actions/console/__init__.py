"""The operators' view of the store: a read API (``flyte_actions.console.v1``), the CLI
commands on it, and a web console served as static files by the same process."""
