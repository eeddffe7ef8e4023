"""The apihelper gRPC service: pipeline, engines, prompts and the gRPC layer."""
