-- One database per service (each service owns its data); the services create
-- their tables themselves at start.
CREATE DATABASE IF NOT EXISTS dialstack_users CHARACTER SET utf8mb4;
CREATE DATABASE IF NOT EXISTS dialstack_scheduler CHARACTER SET utf8mb4;
CREATE DATABASE IF NOT EXISTS dialstack_media CHARACTER SET utf8mb4;
CREATE DATABASE IF NOT EXISTS dialstack_storage CHARACTER SET utf8mb4;
CREATE DATABASE IF NOT EXISTS dialstack_monitor CHARACTER SET utf8mb4;
GRANT ALL PRIVILEGES ON dialstack_users.* TO 'dialstack'@'%';
GRANT ALL PRIVILEGES ON dialstack_scheduler.* TO 'dialstack'@'%';
GRANT ALL PRIVILEGES ON dialstack_media.* TO 'dialstack'@'%';
GRANT ALL PRIVILEGES ON dialstack_storage.* TO 'dialstack'@'%';
GRANT ALL PRIVILEGES ON dialstack_monitor.* TO 'dialstack'@'%';
