"""apihelper-client: the streaming client sample, over the generated ``apihelper.v1`` stubs."""
