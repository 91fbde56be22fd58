struct Server;

impl Server {
    #[flip::starter]
    fn listeners(&self) -> Result<(), flip::Error> {
        Ok(())
    }
}

fn main() {}
