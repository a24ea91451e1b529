"""Assembly: builds the components each command runs, starts and stops them in order."""
