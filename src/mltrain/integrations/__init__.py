"""Integrations of mltrain with other training libraries (imported on demand, never by `import mltrain`)."""
