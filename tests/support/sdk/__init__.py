"""The real Flyte SDK against the Actions Service.

``support`` runs in the main venv (the server, the SDK venv, the subprocess plumbing);
the other modules here are driver scripts that run in ``.venv-sdk`` (see
scripts/sdk-venv.sh and docs/sdk-interop.md).
"""
