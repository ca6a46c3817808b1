module qrunreal/goprog

go 1.19
