"""SELMA stage 1: skill-specific prompts written by an LLM from a few examples.

``fewshot`` builds requests and parses responses, ``dedup`` is the ROUGE-L near-duplicate
filter, ``engines`` turn requests into texts, and ``stage`` runs the self-instruct loop.
"""
