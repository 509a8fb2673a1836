print("api says hello")
