"""The PICPIK wire format, shared by the server and the SDK: no FastAPI, no torch."""
