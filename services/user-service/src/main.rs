#[tokio::main]
async fn main() -> std::process::ExitCode {
    dialstack_common::service::main::<user_service::Application>("user-service").await
}
