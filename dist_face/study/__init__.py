"""The loss study: every loss trained under one budget and scored on held-out identities."""
