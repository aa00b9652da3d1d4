"""PLC bridges: Modbus TCP and OPC UA servers fed by the daemon's events."""
