"""Sample data shipped with napari-vnet (installed as ``napari_vnet.sample_data``)."""
