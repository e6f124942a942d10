#[tokio::main]
async fn main() -> std::process::ExitCode {
    dialstack_common::service::main::<task_scheduler::Application>("task-scheduler").await
}
