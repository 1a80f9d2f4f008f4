"""The multilingual transformer: loading by name or folder, identity, and the offline e5 build."""
