"""The MCP front end (Model Context Protocol): tools for coding agents over the shared core.

``server`` builds the server (tools, resources, the call policy); ``errors`` maps the error tree
to tool errors; ``render`` writes a REST call as curl or requests; ``stdio`` is ``apihelper-mcp``.
The only package that imports ``mcp``.
"""
