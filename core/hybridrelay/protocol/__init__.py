"""The Hybrid Connections wire format: the only wire-format import relay, listener and client use."""
