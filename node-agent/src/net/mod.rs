//! Links, namespaces, bridges and VXLAN over netlink (being written).
