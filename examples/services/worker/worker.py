print("worker is working")
