"""Candidate generation shared by triage and link: the sources, their merge and the KB index."""
