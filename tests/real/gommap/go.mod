module qrunreal/gommap

go 1.19
