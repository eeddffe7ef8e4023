"""Generation engines behind one small protocol (``service.engine.protocol``)."""
