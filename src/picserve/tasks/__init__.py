"""Durable tasks and their queue on PostgreSQL (procrastinate), embedded or shared."""
